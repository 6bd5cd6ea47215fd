"""Every setting of every command, declared once (:mod:`.sections`) on one engine
(:mod:`.engine`); a run's config resolved from presets and overrides (:mod:`.presets`);
command-line flags (:mod:`.flags`) and docs (:mod:`.docs`) generated from the same classes."""

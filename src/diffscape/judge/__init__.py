"""Judges: classifiers trained on real images that check whether generated images belong to the
class they were requested as (:func:`diffscape.judge.score.score`), and the Classification
Accuracy Score (:func:`diffscape.judge.cas.cas`). Import from the modules: this package exports
nothing, so that ``diffscape.judge.settings`` (the CLI's defaults) loads without torch and
scikit-learn (seconds on a busy CPU).
"""

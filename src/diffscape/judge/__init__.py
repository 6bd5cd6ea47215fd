"""Judges: classifiers trained on real images that check whether generated images belong to the
class they were requested as (:func:`diffscape.judge.score.score`), and the Classification
Accuracy Score (:func:`diffscape.judge.cas.cas`). Import from the modules: this package exports
nothing. The judges' settings are :mod:`diffscape.settings.sections`' ``CNNSettings`` and
``SVCSettings``.
"""

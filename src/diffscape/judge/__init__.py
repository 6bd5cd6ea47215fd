"""Judges: classifiers trained on real images that check whether generated images belong to the
class they were requested as (``score``), and the Classification Accuracy Score (``cas``)."""

from diffscape.judge.cas import cas
from diffscape.judge.cnn import CNNSettings
from diffscape.judge.score import score
from diffscape.judge.store import load_judge
from diffscape.judge.svc import SVCSettings
from diffscape.judge.train import JudgeResult, train_judge

__all__ = ["CNNSettings", "JudgeResult", "SVCSettings", "cas", "load_judge", "score", "train_judge"]

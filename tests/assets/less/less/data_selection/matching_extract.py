# An extract of LESS's less/data_selection/matching.py (princeton-nlp/LESS at 8abf9628b9a814ac3045445eebc8ba3c908fdc78, MIT,
# ../../LICENSE): line 4 (torch) and lines 31-41 (calculate_influence_score), unchanged. See ../../README.md.
import torch


def calculate_influence_score(training_info: torch.Tensor, validation_info: torch.Tensor):
    """Calculate the influence score.

    Args:
        training_info (torch.Tensor): training info (gradients/representations) stored in a tensor of shape N x N_DIM
        validation_info (torch.Tensor): validation info (gradients/representations) stored in a tensor of shape N_VALID x N_DIM
    """
    # N x N_VALID
    influence_scores = torch.matmul(
        training_info, validation_info.transpose(0, 1))
    return influence_scores

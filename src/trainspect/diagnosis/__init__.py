"""trainspect.diagnosis: post-training model diagnosis (MD tree on loss-landscape metrics) and model zoos.

    diagnosis = trainspect.diagnose(model, (x_train, y_train), (x_val, y_val), recipe=train_with_seed)
    print(diagnosis)
"""

from trainspect.diagnosis.diagnose import Diagnosis, diagnose
from trainspect.diagnosis.labels import rfi_labels, rfi_values
from trainspect.diagnosis.metrics import (
    bezier_mode_connectivity,
    hessian_metrics,
    linear_interpolation_connectivity,
    loss_and_error,
    output_cka,
)
from trainspect.diagnosis.tree import MDTree, fit_md_tree, load_trees, save_trees

__all__ = [
    "Diagnosis",
    "MDTree",
    "bezier_mode_connectivity",
    "diagnose",
    "fit_md_tree",
    "hessian_metrics",
    "linear_interpolation_connectivity",
    "load_trees",
    "loss_and_error",
    "output_cka",
    "rfi_labels",
    "rfi_values",
    "save_trees",
]

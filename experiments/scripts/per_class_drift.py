"""Where a defense's C-Acc loss goes: per-class test accuracy of a teacher and of a defended model.

  PYTHONPATH=. python experiments/scripts/per_class_drift.py TEACHER_RUN DEFENSE_RUN

Prints overall accuracies, the 10 classes whose accuracy fell most (test images, teacher and
defended accuracy, the change, and how often the defended model predicts the class relative to
its true share), the 5 classes the defended model over-predicts most, and the teacher/defended
agreement on the test set.
"""

import sys

import numpy as np

from backdoor_core import rundir
from backdoor_core.data import load_dataset
from backdoor_core.train import predict


def per_class(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [K] on each class's images, predicted share / true share [K])."""
    accuracy = np.array([(predictions[labels == k] == k).mean() for k in range(num_classes)])
    true_share = np.bincount(labels, minlength=num_classes) / len(labels)
    return accuracy, np.bincount(predictions, minlength=num_classes) / len(predictions) / true_share


def main(teacher_run: str, defense_run: str) -> None:
    _, test = load_dataset(rundir.read_record(teacher_run)["dataset_source"])
    preds = {}
    for name, run in (("teacher", teacher_run), ("defended", defense_run)):
        _, module, variables = rundir.load_model(run)
        preds[name] = predict(module, variables, test.images)
    k = test.num_classes
    t_acc, _ = per_class(preds["teacher"], test.labels, k)
    d_acc, d_share = per_class(preds["defended"], test.labels, k)
    print(f"accuracy: teacher {(preds['teacher'] == test.labels).mean():.4f}, "
          f"defended {(preds['defended'] == test.labels).mean():.4f}")
    print("class  images  teacher  defended  change  predicted/true share (defended)")
    for c in np.argsort(d_acc - t_acc)[:10]:
        print(f"{c:5d}  {(test.labels == c).sum():6d}  {t_acc[c]:7.3f}  {d_acc[c]:8.3f}  {d_acc[c] - t_acc[c]:+6.3f}  "
              f"{d_share[c]:.2f}")
    print("over-predicted most:", ", ".join(f"class {c}: {d_share[c]:.2f}x" for c in np.argsort(-d_share)[:5]))
    print(f"teacher/defended agreement: {(preds['teacher'] == preds['defended']).mean():.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

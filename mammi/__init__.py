"""The method's science: pure functions of tensors, no files. method (MAMMI itself), evidence (the name
test), describers (the rival describers and their scores), ablation (the ablation statistic), metrics
(the classifier's AUROC, AUPRC and thresholds)."""

"""The method's science: pure functions of tensors (and of a model, where a formula needs its forward
pass), no files. method (MAMMI itself), evidence (the name test), describers (the rival describers and
their scores), ablation (the ablation statistic), metrics (the classifier's AUROC, AUPRC and thresholds),
attribution (Taylor scores), maps (a layer's spatial maps, step 6's maps), pointing (the pointing game),
dissection (Network Dissection's IoU), text_metrics (the fc cosine metric), sensitivity (the describer
table's grids over p and alpha)."""

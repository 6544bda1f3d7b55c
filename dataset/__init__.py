"""Probing-set loaders (`nih`) and the data files the scripts read (split files, boxes, concept sets)."""

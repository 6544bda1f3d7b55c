"""mammi/dissection.py: Network Dissection's IoU over several images, against a plain loop over images,
neurons and findings (numpy's quantile, one upsampling per map, pixel counts)."""
import numpy as np
import torch
import torch.nn.functional as F

from dataset.boxes import scale_to, to_probe_crop
from mammi.dissection import dissect
from mammi.pointing import box_mask


def test_iou_equals_a_plain_loop_over_images_neurons_and_findings():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 2, 3, 3, generator=g)
    sizes = torch.tensor([[512, 512], [1024, 1024], [256, 512]])  # (width, height) of each image
    anns = [[{"label": "mass", "box": [0, 0, 500, 600], "polygon": None}], [],
            [{"label": "nodule", "box": [300, 200, 1000, 900], "polygon": None},
             {"label": "mass", "box": [600, 600, 1000, 1000], "polygon": None}]]
    findings, resize, crop, q = ["mass", "nodule", "edema"], 20, 16, 0.8
    got = dissect(maps, sizes, anns, findings, resize, crop, q, batch_size=2)
    T = np.quantile(maps.transpose(0, 1).reshape(2, -1).double().numpy(), q, axis=1)
    inter, union = np.zeros((2, 3)), np.zeros((2, 3))
    for i in range(3):
        size = tuple(sizes[i].tolist())
        crop_anns = to_probe_crop(scale_to(anns[i], size), size, resize, crop)
        for k in range(2):
            up = F.interpolate(maps[i, k][None, None], size=(crop, crop), mode="bilinear", align_corners=False)[0, 0]
            on = up.double().numpy() > T[k]
            for c, f in enumerate(findings):
                mask = box_mask([a["box"] for a in crop_anns if a["label"] == f], crop)
                inter[k, c] += (on & mask).sum()
                union[k, c] += (on | mask).sum()
    want = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    assert inter.sum() > 0 and (union > inter).any()  # a case where the count is neither empty nor whole
    assert np.allclose(got["thresholds"].numpy(), T)
    assert np.array_equal(got["intersection"].numpy(), inter)
    assert np.allclose(got["iou"].numpy(), want, atol=1e-12)

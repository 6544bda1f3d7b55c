"""mammi/pointing.py: the box mask against a loop over pixel centres, and the pointing game on maps made by hand."""
import numpy as np

from mammi.pointing import box_mask, pointing


def test_box_mask_holds_the_pixels_whose_centre_is_inside_a_box():
    boxes = [[1.0, 0.5, 2.6, 2.5], [3.5, 3.5, 4.0, 4.0]]
    got = box_mask(boxes, 5)
    for r in range(5):
        for c in range(5):
            inside = any(x1 <= c + 0.5 <= x2 and y1 <= r + 0.5 <= y2 for x1, y1, x2, y2 in boxes)
            assert got[r, c] == inside, (r, c)


def test_the_peak_and_the_mass_inside_the_boxes():
    heat = np.zeros((4, 4))
    heat[1, 2], heat[3, 0], heat[0, 0] = 3.0, 1.0, -5.0  # a negative value is no mass
    got = pointing(heat, [[2.0, 1.0, 3.0, 2.0]])  # the box holds pixel (row 1, column 2) only
    assert got == {"hit": True, "mass_inside": 0.75, "peak": [2.5, 1.5]}
    assert pointing(heat, [[0.0, 3.0, 1.0, 4.0]]) == {"hit": False, "mass_inside": 0.25, "peak": [2.5, 1.5]}
    assert pointing(-np.ones((3, 3)), [[0, 0, 3, 3]]) == {"hit": False, "mass_inside": None, "peak": None}

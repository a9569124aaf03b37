import numpy as np
import pytest

from sonossl.data.readers import read_source
from sonossl.data.sector import crop_to_region, find_scan_region, locate_scan_region, regions_box


def _inside(box, outer):
    return box[0] >= outer[0] and box[1] >= outer[1] and box[2] <= outer[2] and box[3] <= outer[3]


def test_moving_fan_found_and_static_text_left_out(scans):
    frames = scans.clip(t=8)
    box, mask, how = locate_scan_region(frames)
    assert how == "motion"
    x0, y0, x1, y1 = scans.FAN_BOX
    assert _inside(box, (x0 - 2, y0 - 2, x1 + 2, y1 + 2)) and _inside((x0 + 2, y0 + 2, x1 - 2, y1 - 2), box)
    fan = frames.std(0) > 0
    assert mask[fan].mean() > 0.95  # the fan is inside the mask
    assert not mask[:10].any() and not mask[-3:].any()  # text rows and the UI bar are not


def test_single_frame_falls_back_to_texture(scans):
    frame = scans.clip(t=1)
    box, mask, how = locate_scan_region(frame)
    assert how == "texture"
    x0, y0, x1, y1 = scans.FAN_BOX
    assert _inside(box, (x0 - 2, y0 - 2, x1 + 2, y1 + 2)) and box[3] - box[1] > 0.8 * (y1 - y0)
    assert not mask[:10].any()


def test_dicom_regions_used_only_when_consistent():
    frames = np.zeros((2, 100, 120), np.uint8)
    box, mask = find_scan_region(frames, [(10, 20, 90, 80)])
    assert box == (10, 20, 90, 80) and mask.sum() == 80 * 60
    assert regions_box([(84, 31, 596, 415)], 240, 320) is None  # recorded at another resolution
    assert regions_box([(10, 10, 14, 14)], 100, 120) is None  # implausibly small
    box, _, how = locate_scan_region(frames, [(84, 31, 596, 415)])
    assert how == "full" and box == (0, 0, 120, 100)  # nothing moves, nothing textured


def test_cardiac_cine_crop_excludes_the_ui(scans):
    """examples_ybr_color.dcm: labels at the top corners, a scale at the right, a tool bar from
    row ~225 down. Its DICOM regions are for another resolution, so motion must find the fan."""
    clip = read_source(scans.pydicom_file("examples_ybr_color.dcm"))
    box, mask, how = locate_scan_region(clip.frames, clip.regions)
    assert how == "motion"
    assert _inside(box, (38, 10, 297, 222)), box  # clear of the text and the tool bar
    assert box[2] - box[0] > 180 and box[3] - box[1] > 160, box  # most of the fan
    assert not mask[222:].any() and not mask[:, :38].any() and not mask[:, 297:].any()


def test_palette_still_crop_leaves_banner_and_labels_out(scans):
    """examples_palette.dcm: a banner (rows < 60), settings text (x < 110), a grey scale at x ~ 780."""
    clip = read_source(scans.pydicom_file("examples_palette.dcm"))
    box, _, how = locate_scan_region(clip.frames, clip.regions)
    assert how == "texture"
    assert _inside(box, (300, 60, 620, 200)) and box[2] - box[0] > 200, box


def test_crop_pads_to_a_centred_square_and_blanks_outside_the_mask():
    frames = np.full((3, 50, 80), 200, np.uint8)
    mask = np.ones((50, 80), bool)
    mask[:, :5] = False
    out = crop_to_region(frames, (0, 10, 80, 30), mask, 40)  # 80 x 20 -> 80 x 80 -> 40 x 40
    assert out.shape == (3, 40, 40) and out.dtype == np.uint8
    assert (out[:, :14] == 0).all() and (out[:, 26:] == 0).all()  # black bars above and below
    assert (out[:, 16:24, 4:] == 200).all() and (out[:, 16:24, :2] == 0).all()  # masked strip blank
    same = crop_to_region(frames, (0, 0, 50, 50), np.ones((50, 80), bool), 50)
    np.testing.assert_array_equal(same, frames[:, :, :50])


def test_bad_shape_refused():
    with pytest.raises(ValueError):
        find_scan_region(np.zeros((10, 10), np.uint8))

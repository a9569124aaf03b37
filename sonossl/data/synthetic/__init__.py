"""The built-in synthetic fetal-echo dataset: ``sonossl synth`` and ``sonossl demo`` start here.

It mimics the five standard fetal cardiac planes (SFCP) and how an ultrasound scanner forms an
image, so that the whole pipeline (ingest -> pretrain -> limited-label evaluation) can run
without patient data, and so that self-supervised pretraining has something to learn: the
classes differ only in *shape and layout*, while everything a pixel-level model could latch on
to (position, rotation, scale, speckle, gain, brightness, dark area) is randomised.

The planes (drawn in a heart-centred frame: u to the right, v into depth; 1 unit = heart radius)
- ``4CH``  four fluid-filled chambers in a 2 x 2 cross inside the myocardium, bright septum and
  walls between them; atria and ventricles beat in counter-phase.
- ``LVOT`` one chamber with an outflow tube (the aorta) leaving it up and to the **right**.
- ``RVOT`` one chamber with an outflow tube leaving it up and to the **left**.
- ``3VV``  three vessel cross-sections (dark discs with bright walls) in a row, decreasing size.
- ``3VT``  two vessel arches meeting in a V, the SVC beside them and the trachea: a small ring
  with a thick bright wall.

**Side matters: a horizontal flip turns LVOT into RVOT and back** (RVOT is LVOT mirrored).
Any augmentation or test-time transform that flips left-right must be disabled for these labels;
the evaluation disables horizontal flips by default. Rotations are not restricted: the fetus lies
at any angle under the probe, and a rotation keeps handedness (an LVOT turned by any angle is
still an LVOT), so the heart's axis is drawn uniformly over the full circle.

Image formation (all vectorised numpy + scipy.ndimage; no per-pixel Python)
1. The scene is evaluated on a polar grid (depth r x beam angle theta) of a 60-degree sector:
   fetal thorax (lung tissue) in amniotic fluid, thorax ring, spine and ribs (bright reflectors),
   the heart plane, and nuisance fluid pockets. The tissue texture is a smooth random field.
2. Along each beam: depth attenuation with partial time-gain compensation, and acoustic shadows
   behind bone (the transmitted intensity decays with the attenuation accumulated along r).
3. Fully developed speckle: Rayleigh-distributed amplitude (|complex Gaussian| with a correlated
   resolution cell, longer laterally than axially), multiplicative, partly persistent across
   the frames of a clip.
4. Log compression with random dynamic range, gain and contrast (gamma); random blur.
5. Scan conversion to a Cartesian square that is the sector's bounding box: black outside.

Motion over a clip: the chambers and vessels pulse at a random heart rate (110-170 bpm at a
random cine rate), and the probe drifts: slow translation and rotation of the whole scene.

Outputs of :func:`synthesize`
- ``videos/``: unlabelled clips (one random plane each) as files ``ingest`` reads: multi-frame
  DICOM (Ultrasound Multi-frame Image Storage, MONOCHROME2, 8 bit, uncompressed, with fake PHI
  and ``SequenceOfUltrasoundRegions`` giving the sector box) or MP4 (PyAV, yuv420p). Each frame
  is a scanner *screen*: the sector at a fixed per-clip position on a larger black canvas, with
  burned-in fake patient name/ID/date, ``SONOSSL SYNTH``, depth markers and a grey UI bar, all
  outside the sector's box. ``videos/_truth.csv`` (file, class, sector box) is private ground
  truth for tests; it is not a video, so ingestion skips it.
- ``labelled/``: PNG images of the sector box only (what ingestion yields after cropping),
  ``images/<split>/<class>/<n>.png``, and ``train.csv``, ``valid.csv``, ``test.csv`` with
  columns ``image_path,class`` (paths relative to ``labelled/``). Every labelled image is one
  random frame of its own freshly drawn anatomy: disjoint from the clips and from each other.

Everything is deterministic in ``seed``: item k of a given kind draws from its own random
stream, so the same seed gives byte-identical PNGs and identical DICOM pixel data.
"""


from __future__ import annotations

from sonossl.data.synthetic.files import FORMATS, SPLITS, synthesize
from sonossl.data.synthetic.scene import CLASSES, ZOOM, Anatomy, render_clip, sample_anatomy, sector_mask

__all__ = ["CLASSES", "FORMATS", "SPLITS", "ZOOM", "Anatomy", "render_clip", "sample_anatomy", "sector_mask", "synthesize"]

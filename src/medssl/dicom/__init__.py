"""DICOM → dataset building blocks of the ingest stage (medssl.stages.ingest).

* `walk`    find the files of an export (recursively, DICOMDIR or not)
* `deid`    salted pseudonyms, per-patient date shift, the PS3.15 Annex E tag list, text scrubbing
* `pixels`  a frame as display pixels: modality/VOI LUT, palette and YBR → RGB, MONOCHROME1
* `scope`   colour-Doppler detector and exam-title scope (paper 000 §3.1)
* `reader`  one file: header record, then its frames as PNGs (runs in worker processes)
* `flowchart`  the Fig. 4-like flowchart of the counts
"""

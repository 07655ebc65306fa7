"""Finding the salient regions an image keeps verbatim: the detectors (faces, text,
Grounding DINO + SAM) and the step that runs them."""

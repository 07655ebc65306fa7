"""The .plic format and the codecs of its parts: the container (fileformat), JBIG2 edges,
the palette, the prompt, the salient regions' pixels, packing and rate control."""

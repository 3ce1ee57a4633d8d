import numpy as np
from limitr.use import load

model = load("data/model")  # finds data/tokens/tokenizer and the image size in data/shards
study = model.encode_images(["cxr.jpg"], laterals=["cxr_lateral.jpg"])  # any JPEG/PNG; lateral optional
texts = model.encode_text(["right upper lobe consolidation", "no acute cardiopulmonary process"])
scores = model.score(study, texts)  # (studies, texts): .total (combined), .global_, .local
print("combined:", scores.total.tolist(), "global:", scores.global_.tolist())
heat = model.ground("cxr.jpg", "right upper lobe consolidation")  # map in cxr.jpg's own pixels
y, x = np.unravel_index(np.nanargmax(heat.values), heat.values.shape)
print("map of", heat.values.shape, "over an image of", heat.image.shape, "peaks at x, y =", x, y)

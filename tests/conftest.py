import os

# Tests run offline and quietly; two cores are shared by everything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LIMITR_NO_PROGRESS", "1")

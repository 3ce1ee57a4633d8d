"""Reading MIMIC-CXR (real or synthetic), report sections, images and Parquet shards."""

from setuptools import find_packages, setup

setup(
    name="beats_hf",
    version="0.1.0",
    description="BEATs (Audio Pre-Training with Acoustic Tokenizers) for Hugging Face transformers: "
    "exact inference, acoustic tokenizers, and the full iterative pre-training recipe.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"beats_hf": ["data/*.csv", "data/*.md", "training/metrics/*/*.py"]},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "transformers>=5.0",
        "datasets>=4.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "tqdm",
        # datasets decodes audio through torchcodec; 0.13 is the newest CPU build that works with torch 2.13
        # (0.14-0.17 are CUDA builds). It needs Debian's FFmpeg 5.1 libraries (see the Makefile).
        "torchcodec==0.13.0",
    ],
    entry_points={"console_scripts": ["beats-hf=beats_hf.cli:run"]},
)

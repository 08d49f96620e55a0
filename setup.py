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
    # Each lower bound is the lowest version the whole suite has passed on (`make test-lowest`), each upper bound the
    # next major version; `make install` installs the exact versions of requirements-lock.txt (README, "Installation").
    install_requires=[
        "torch>=2.13,<3",
        "numpy>=2.2,<3",
        "transformers>=5.24,<6",
        "datasets>=5.1,<6",
        "accelerate>=1.16,<2",  # 1.14 refuses the CPU + disk device_map tests (make test-lowest)
        "evaluate>=0.4.6,<1",
        "huggingface_hub>=2.3,<3",
        "safetensors>=0.8,<1",
        "tqdm>=4.67,<5",
        # datasets decodes audio through torchcodec. Its builds follow torch's: with torch 2.13 on a CPU, 0.13 is the one
        # (0.14 to 0.17 are CUDA builds); it needs FFmpeg's libraries (see the Makefile).
        "torchcodec>=0.13,<1",
    ],
    entry_points={"console_scripts": ["beats-hf=beats_hf.cli:run"]},
)

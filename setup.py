from setuptools import setup

# `kernels/` is installed as the subpackage interns2_fast.kernels, never as a top-level `kernels`
# module: transformers probes importlib.util.find_spec("kernels") for the Hugging Face package.
setup(
    name="interns2-fast",
    version="0.1.0",
    description="Triton-Ascend kernels and load-time patching that make Intern-S2-Preview fast on Ascend NPUs",
    python_requires=">=3.10",
    packages=[
        "interns2_fast",
        "interns2_fast.ops",
        "interns2_fast.torch_impl",
        "interns2_fast.patching",
        "interns2_fast.decode",
        "interns2_fast.kernels",
    ],
    package_dir={"interns2_fast": "interns2_fast", "interns2_fast.kernels": "kernels"},
    # the Intern-S2-Preview remote-code stand-in (generated from transformers 5.2.0; data, never imported)
    package_data={"interns2_fast": ["intern_s2_stand_in/*.py"]},
    install_requires=["torch>=2.5", "transformers>=5.2.0", "rich", "tqdm"],
    extras_require={
        "npu": ["torch_npu", "triton-ascend"],
        "cuda": ["triton"],
        "test": [
            "pytest",
            "pytest-benchmark",
            "pytest-xdist",
            "accelerate",  # device_map loading in the patching tests
            "hypothesis",
            "matplotlib",
            "triton-ascend==3.2.0",
            "ascendnpu-ir==1.2.0",
            "pybind11",
            # triton-ascend 3.2's interpreter fails on runtime loop bounds with numpy 2
            "numpy<2",
        ],
    },
    entry_points={"console_scripts": ["interns2-fast=interns2_fast.cli:main"]},
)

"""Package ``recsys``; its runtime pins come from requirements.txt (the one pin file)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
DEV = {"pytest", "pytest-timeout", "kubernetes-validate", "yamllint", "selenium"}


def _pins() -> tuple[list[str], list[str]]:
    runtime, dev = [], []
    for line in (HERE / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("#nodeps ") or line.startswith("#build "):
            # installed by scripts/setup_env.sh (no-deps / built from source); declared
            # here without their own dependency chains so pip check stays meaningful
            line = line.split(" ", 1)[1]
        elif not line or line.startswith("#"):
            continue
        (dev if line.split("==")[0] in DEV else runtime).append(line)
    return runtime, dev


RUNTIME, DEVELOPMENT = _pins()

setup(
    name="recsys",
    version="0.1.0",
    description="Distributed movie recommendations: Spark prepare, Horovod training, FAISS serving",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["recsys", "recsys.*"]),
    install_requires=[p for p in RUNTIME if not p.startswith(("horovod", "tf-keras"))],
    extras_require={"dev": DEVELOPMENT, "horovod": [p for p in RUNTIME if p.startswith(("horovod", "tf-keras"))]},
    entry_points={"console_scripts": ["recsys=recsys.cli:main"]},
    include_package_data=True,
    package_data={"recsys": ["log4j2-quiet.properties", "web/*"]},  # quiet Spark logging; the page recsys serve serves
)

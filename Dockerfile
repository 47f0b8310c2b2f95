# The trainer's image. Its entrypoint is the trainer's restart loop:
#
#     docker run IMAGE JOB.yaml --run-uri s3://BUCKET/PREFIX      (GPU_COUNT=N: torchrun, N processes)
#
# BASE_IMAGE defaults to a pinned CUDA PyTorch runtime; any image with Python 3.10+ and pip works,
# and a torch it already has is kept. The tests, which cannot pull images, build on the CPU image
# that infra/setup-docker-host.sh makes (spot-runner-base:cpu).
#
# No secret ever goes into this image: credentials (AWS_*, HF_TOKEN, ...) are given to the
# container at run time only, never as build arguments or ENV here.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off

# Dependencies first, from pyproject.toml alone, so that a change to the code reuses this layer
# and rebuilds in seconds.
COPY pyproject.toml infra/image_requirements.py /tmp/spot-runner/
RUN cd /tmp/spot-runner \
    && python image_requirements.py pyproject.toml requirements.txt constraints.txt \
    && python -m pip install -r requirements.txt -c constraints.txt \
    && rm -rf /tmp/spot-runner

# A user of its own: the trainer needs no root. Files copied below stay root's: read-only to it.
RUN useradd --create-home --shell /bin/sh trainer
USER trainer
WORKDIR /app
# Not installed as a package (that would need a build backend from an index): on PYTHONPATH.
# No .pyc files: the code is read-only to the trainer, and compiling it takes milliseconds.
ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    GPU_COUNT=1
# A shell only to read GPU_COUNT at run time; `exec` leaves python as PID 1, so `docker stop`'s
# SIGTERM reaches the restart loop, which passes it on to the trainer (emergency checkpoint).
# Supervisor mode, for a supervisor elsewhere (an always-on Docker host, a RunPod CPU pod):
#     docker run IMAGE supervisor run --storage s3://BUCKET/PREFIX
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = supervisor ]; then exec python -m runner \"$@\"; fi; exec python -m trainer restart-loop --nproc \"${GPU_COUNT:-1}\" \"$@\"", "entrypoint"]
CMD ["jobs/quickstart.yaml", "--run-uri", "/tmp/runs/quickstart"]

# The code and the job files (with their data) last, in one step: all a code change rebuilds.
COPY . /app

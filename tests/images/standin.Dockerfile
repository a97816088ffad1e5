# The stand-in stage image of the cluster tests: tests/cluster/standin.py on the runtime
# image, as its `kubeslim-standin` command. One thin layer: the runtime image's user
# (10001), environment and kubeslim (whose StageResult the stand-in writes) stay as they
# are. tests/images/build.py builds it (standin_image()) with RUNTIME_IMAGE set to the
# runtime image it has just built or found.
ARG RUNTIME_IMAGE
FROM ${RUNTIME_IMAGE}
COPY --chmod=755 tests/cluster/standin.py /usr/local/bin/kubeslim-standin

# asl-serve: build and run image (CPU). The CUDA path needs the same binaries on a CUDA base with
# the torch 2.11.0+cu130 wheel; see docs/gpu.md.
#   docker build -t asl-serve .
#   docker run -p 50051:50051 -p 9090:9090 -p 8080:8080 asl-serve
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends sudo python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.txt ./
COPY scripts/setup.sh scripts/
# Packages, venv (torch, test references) and the default model, exactly as on a developer machine.
RUN scripts/setup.sh
COPY . .
RUN scripts/build.sh -DASL_BUILD_TESTS=OFF

FROM debian:bookworm AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libspdlog1.10 libfmt9 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libyaml-cpp0.7 libpcre2-8-0 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# libtorch and its CUDA runtime libraries come from the wheel in the build stage's venv.
COPY --from=build /src/.venv/lib/python3.11/site-packages/torch/lib /app/lib/torch
COPY --from=build /src/.venv/lib/python3.11/site-packages/nvidia /app/lib/nvidia
COPY --from=build /src/build/bin /app/bin
COPY --from=build /src/models /app/models
COPY config /app/config
ENV LD_LIBRARY_PATH=/app/lib/torch
EXPOSE 50051 9090 8080
USER 65534:65534
ENTRYPOINT ["/app/bin/asl-server", "--config", "/app/config/default.yaml", "--model.path", "/app/models/SmolLM2-135M-Instruct.Q4_1.gguf"]

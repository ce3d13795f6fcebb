#!/usr/bin/env bash
# verl: Qwen2.5-7B-Instruct on DeepMath-103K with policy_loss.loss_mode=sspo. Extra hydra overrides are passed through.
source "$(dirname "$0")/../common.sh"
launch deepmath sspo "$@"

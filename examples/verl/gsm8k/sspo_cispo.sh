#!/usr/bin/env bash
# verl: Qwen2.5-0.5B-Instruct on GSM8K with policy_loss.loss_mode=sspo_cispo. Extra hydra overrides are passed through.
source "$(dirname "$0")/../common.sh"
launch gsm8k sspo_cispo "$@"

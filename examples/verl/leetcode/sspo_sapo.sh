#!/usr/bin/env bash
# verl: Qwen2.5-7B-Instruct on LeetCodeDataset (execution reward in sspo's sandbox) with policy_loss.loss_mode=sspo_sapo. Extra hydra overrides are passed through.
source "$(dirname "$0")/../common.sh"
launch leetcode sspo_sapo "$@"

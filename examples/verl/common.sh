#!/usr/bin/env bash
# Shared verl launcher for the sspo objectives. Usage (from a per-objective script):
#   source examples/verl/common.sh; launch <setup: gsm8k|deepmath|leetcode> <verl loss_mode> [extra hydra overrides...]
# Environment: DATA_DIR (parquet from preprocess.py, default ~/data/sspo), N_GPUS, NNODES, LOGGER;
# for leetcode also SSPO_CODE_WORKERS, SSPO_CODE_TIMEOUT, SSPO_CODE_MEMORY_MB (see reward.py).
set -euo pipefail

# Every Ray worker imports the plug-in: through the environment (single node: workers inherit it;
# multi-node: export it before `ray start` on every node) and through the model config, imported in
# every worker that builds the actor.
export VERL_USE_EXTERNAL_MODULES=sspo.integrations.verl

objective_overrides() {  # hyperparameters per objective, through the actor fields the plug-in reads
  local agg  # docs/objectives.md's aggregation (verl's default token-mean is refused by sequence objectives)
  case "$1" in
    sspo_cispo|sspo_vespo|sspo_dppo_tv|sspo_dppo_kl|sspo_m2po) agg=token-mean ;;
    sspo_luspo) agg=seq-mean-token-sum ;;  # LUSPO scales each sequence's term by its length itself
    *) agg=seq-mean-token-mean ;;
  esac
  echo "actor_rollout_ref.actor.loss_agg_mode=$agg"
  case "$1" in
    sspo_grpo)  # DAPO clip-higher
      echo "actor_rollout_ref.actor.clip_ratio_low=0.2 actor_rollout_ref.actor.clip_ratio_high=0.28" ;;
    sspo_gspo|sspo_gspo_token|sspo_luspo)  # GSPO paper (LUSPO is GSPO scaled by length)
      echo "actor_rollout_ref.actor.clip_ratio_low=0.0003 actor_rollout_ref.actor.clip_ratio_high=0.0004" ;;
    sspo_gmpo)  # GMPO paper: log-space clip (e^-0.4, e^0.4)
      echo "actor_rollout_ref.actor.clip_ratio_low=0.4 actor_rollout_ref.actor.clip_ratio_high=0.4" ;;
    sspo_cispo)  # r_max = 1 + clip_ratio_high = 5; CISPO is token-mean
      echo "actor_rollout_ref.actor.clip_ratio_low=0.2 actor_rollout_ref.actor.clip_ratio_high=4.0" ;;
    sspo_dppo_tv|sspo_dppo_kl)  # the DPPO authors' verl settings: δ = 0.15 (TV) / 0.05 (KL) both sides, c = 1e4 (verl's actor default: 3)
      local delta=0.15; [ "$1" = sspo_dppo_kl ] && delta=0.05
      echo "actor_rollout_ref.actor.clip_ratio=$delta actor_rollout_ref.actor.clip_ratio_low=$delta" \
           "actor_rollout_ref.actor.clip_ratio_high=$delta actor_rollout_ref.actor.clip_ratio_c=10000.0" ;;
    sspo_vespo|sspo_m2po)  # no actor field: the objective's defaults (other values: sspo.integrations.verl.register)
      ;;
    sspo|sspo_sapo|sspo_*)  # SAPO and SSPO with any gate (sspo_<gate>): tau_neg > tau_pos (SAPO's defaults)
      echo "actor_rollout_ref.actor.tau_pos=1.0 actor_rollout_ref.actor.tau_neg=1.05" ;;
    *) echo "unknown sspo loss_mode: $1" >&2; return 2 ;;
  esac
}

setup_overrides() {  # model, data and batch shape per setup: group sampling, 4 mini-batches per rollout batch
  local data=${DATA_DIR:-$HOME/data/sspo}
  case "$1" in
    gsm8k) cat <<EOS
actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct
data.train_files=$data/gsm8k/train.parquet
data.val_files=$data/gsm8k/test.parquet
data.train_batch_size=128
data.max_prompt_length=512
data.max_response_length=1024
actor_rollout_ref.rollout.n=8
actor_rollout_ref.actor.ppo_mini_batch_size=32
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16
actor_rollout_ref.actor.optim.lr=1e-6
actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32
trainer.n_gpus_per_node=${N_GPUS:-4}
trainer.total_epochs=15
EOS
    ;;
    deepmath) cat <<EOS
actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct
data.train_files=$data/deepmath/train.parquet
data.val_files=$data/deepmath/test.parquet
data.train_batch_size=256
data.max_prompt_length=1024
data.max_response_length=4096
actor_rollout_ref.rollout.n=16
actor_rollout_ref.actor.ppo_mini_batch_size=64
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
actor_rollout_ref.actor.optim.lr=1e-6
actor_rollout_ref.actor.fsdp_config.param_offload=False
actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.tensor_model_parallel_size=2
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4
trainer.n_gpus_per_node=${N_GPUS:-8}
trainer.total_epochs=1
EOS
    ;;
    leetcode) cat <<EOS
actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct
data.train_files=$data/leetcode/train.parquet
data.val_files=$data/leetcode/test.parquet
data.train_batch_size=128
data.max_prompt_length=1024
data.max_response_length=2048
actor_rollout_ref.rollout.n=8
actor_rollout_ref.actor.ppo_mini_batch_size=32
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
actor_rollout_ref.actor.optim.lr=1e-6
actor_rollout_ref.actor.fsdp_config.param_offload=False
actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.tensor_model_parallel_size=2
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
trainer.n_gpus_per_node=${N_GPUS:-8}
trainer.total_epochs=10
EOS
    ;;
    *) echo "unknown setup: $1 (gsm8k|deepmath|leetcode)" >&2; return 2 ;;
  esac
}

launch() {
  local setup=$1 loss_mode=$2; shift 2
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  # shellcheck disable=SC2046
  python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    algorithm.rollout_correction.rollout_is=null \
    actor_rollout_ref.model.external_lib=sspo.integrations.verl \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.policy_loss.loss_mode="$loss_mode" \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.temperature=1.0 \
    reward.custom_reward_function.path="$here/reward.py" \
    reward.custom_reward_function.name=compute_score \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    trainer.logger="${LOGGER:-[console,tensorboard]}" \
    trainer.project_name=sspo \
    trainer.experiment_name="${setup}-${loss_mode}" \
    trainer.nnodes="${NNODES:-1}" \
    trainer.save_freq=50 \
    trainer.test_freq=10 \
    $(setup_overrides "$setup") \
    $(objective_overrides "$loss_mode") \
    "$@"
}

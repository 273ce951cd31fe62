from .launch import enable_amp, local_rank_env, setup_distributed, task_of  # noqa: F401

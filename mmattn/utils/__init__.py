from .launch import enable_amp, fix_dataloaders, local_rank_env, setup_distributed, task_of  # noqa: F401

from .launch import (enable_amp, exit_on_user_error, fix_dataloaders,  # noqa: F401
                     local_rank_env, preflight, setup_distributed, task_of,
                     teardown_distributed)

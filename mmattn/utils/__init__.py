from .launch import (ConfigError, build_runner, enable_amp, exit_on_user_error,  # noqa: F401
                     fix_dataloaders, load_config, local_rank_env, preflight, setup_distributed,
                     task_of, teardown_distributed)

"""The ``main()`` every stage shares: its process end, and how it maps what went wrong to an exit
code and one line."""

from __future__ import annotations

from pathlib import Path


def test_exit_process_runs_the_exit_handlers_joins_threads_and_keeps_the_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import atexit, threading, time\n"
        "from spark_jobs.core.jobs import exit_process\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "exit_process(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "bufferedthread done\nhandler ran\n"

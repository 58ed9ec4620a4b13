#!/usr/bin/env python3
"""The sandbox container's main process: runs the commands the tool-runner sends it.

Why a server inside the container instead of `docker exec`: an exec costs the daemon and runc
about 50 ms each; a command sent over the container's attached stdin starts in one or two.

Protocol. Requests arrive on stdin, one JSON object per line:
  {"id": 7, "command": "npm test", "cwd": "/workspace"}   run `/bin/sh -c command` in its own session
  {"id": 7, "kill": true}                                  SIGKILL that command's process group
Replies leave on stdout as frames: type (1 byte), id (4 bytes, big-endian), length (4 bytes), payload.
  1 stdout bytes, 2 stderr bytes, 3 exit (JSON {"code": int|null, "signal": int|null}), 4 error (UTF-8 text),
  5 ready (id 0, empty: sent once at start, so the tool-runner knows a command will start at once)
A command is finished when its shell has exited; output its background children write after that
is read for a short moment and then no longer (so `server &` does not hold the call open). Children
still holding the command's output open then are killed with its process group, and the exit frame
says so ("lingering": true): the tool-runner then retires the container, so that what escaped the
group (a fork bomb's offspring) dies too. Start background servers with their output redirected.

`kill` ends one command (timeout, output limit, cancel); the tool-runner then retires the container,
so a process that left its group dies with it. stdin's end (the tool-runner let go) ends the server.

The protocol pipes are the only trusted channel, and commands run as the server's own uid: a
command that could open /proc/<server>/fd/1 would forge any command's output and exit status, and
/proc/<server>/fd/0 would let it send requests. So the server makes itself non-dumpable before it
says it is ready (its /proc entries then belong to root and ptrace is refused), and it is the
container's PID 1 itself, with no docker-init in front: an init would hold the same pipes as its
own stdio while staying dumpable. As PID 1 it reaps the orphans of commands (`server &`), and a
command cannot kill it (PID 1 ignores signals from inside its namespace).
"""
import ctypes
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import time

STDOUT, STDERR, EXIT, ERROR, READY = 1, 2, 3, 4, 5
READ_SIZE = 65536
# How long output is still read after the shell exited, for the last bytes of its children.
DRAIN_AFTER_EXIT_S = 0.05

out = sys.stdout.buffer
selector = selectors.DefaultSelector()
running = {}  # id -> {"process", "open": set of fds, "exited_at": float | None}


PR_SET_DUMPABLE = 4


def make_undumpable():
    """Closes /proc/<pid>/fd, /proc/<pid>/mem and ptrace of this process to same-uid commands; refuses to serve without it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(errno)}")


def send(kind, command_id, payload):
    out.write(struct.pack(">BII", kind, command_id, len(payload)))
    out.write(payload)
    out.flush()


def start(command_id, command, cwd):
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:  # fork refused by the pids limit, a missing cwd…
        send(ERROR, command_id, f"could not start the command: {error}".encode())
        return
    # The pipes are closed through their file objects only: closing the raw fd as well would let a
    # later garbage collection close a newer command's pipe that reuses the number.
    entry = {"process": process, "open": {}, "exited_at": None}
    for pipe, kind in ((process.stdout, STDOUT), (process.stderr, STDERR)):
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ, (command_id, kind))
        entry["open"][fd] = pipe
    running[command_id] = entry


def close_fd(entry, fd):
    selector.unregister(fd)
    entry["open"].pop(fd).close()


def finish(command_id):
    entry = running.pop(command_id)
    lingering = bool(entry["open"])
    if lingering:
        try:
            os.killpg(entry["process"].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for fd in list(entry["open"]):
        close_fd(entry, fd)
    code = entry["process"].returncode
    reply = {"code": code, "signal": None} if code >= 0 else {"code": None, "signal": -code}
    reply["lingering"] = lingering
    send(EXIT, command_id, json.dumps(reply).encode())


def handle_request(line):
    try:
        request = json.loads(line)
        command_id = int(request["id"])
    except (ValueError, KeyError, TypeError):
        send(ERROR, 0, b"malformed request")
        return
    if request.get("kill"):
        entry = running.get(command_id)
        if entry:
            try:
                os.killpg(entry["process"].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
    start(command_id, str(request.get("command", "")), str(request.get("cwd", "/workspace")))


def reap():
    """Collects every exited child: the commands' shells (through their Popen) and the orphans reparented to PID 1."""
    by_pid = {entry["process"].pid: entry for entry in running.values()}
    while True:
        try:
            # WNOWAIT: look first, so that a command's shell is reaped by its Popen, which keeps the status.
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        entry = by_pid.get(info.si_pid)
        if entry is not None:
            entry["process"].poll()
        else:
            try:
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                pass


def next_timeout():
    """None (sleep until something happens) unless a finished shell's children are being drained."""
    deadlines = [entry["exited_at"] + DRAIN_AFTER_EXIT_S for entry in running.values() if entry["exited_at"] is not None]
    return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def main():
    make_undumpable()
    stdin_fd = sys.stdin.buffer.fileno()
    os.set_blocking(stdin_fd, False)
    selector.register(stdin_fd, selectors.EVENT_READ, None)
    # A shell's exit wakes the loop through this pipe, so an exit is reported at once, not at the next poll.
    child_exited_r, child_exited_w = os.pipe()
    os.set_blocking(child_exited_r, False)
    os.set_blocking(child_exited_w, False)
    signal.set_wakeup_fd(child_exited_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector.register(child_exited_r, selectors.EVENT_READ, "child-exited")
    pending = b""
    send(READY, 0, b"")
    while True:
        for key, _ in selector.select(next_timeout()):
            if key.data == "child-exited":
                try:
                    os.read(child_exited_r, READ_SIZE)
                except BlockingIOError:
                    pass
                continue
            if key.data is None:
                chunk = os.read(stdin_fd, READ_SIZE)
                if not chunk:  # the tool-runner let go of the container: nothing more will come
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        handle_request(line)
                continue
            command_id, kind = key.data
            entry = running.get(command_id)
            if entry is None:
                continue
            try:
                chunk = os.read(key.fd, READ_SIZE)
            except BlockingIOError:
                continue
            if chunk:
                send(kind, command_id, chunk)
            else:
                close_fd(entry, key.fd)
        reap()
        now = time.monotonic()
        for command_id, entry in list(running.items()):
            if entry["exited_at"] is None and entry["process"].poll() is not None:
                entry["exited_at"] = now
            if entry["exited_at"] is not None and (not entry["open"] or now - entry["exited_at"] >= DRAIN_AFTER_EXIT_S):
                finish(command_id)


if __name__ == "__main__":
    main()

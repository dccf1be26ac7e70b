"""TF_CONFIG's worker addresses: checked before TensorFlow sees them, and a bounded wait for
the other workers before the multi-worker strategy starts; no Keras, no TensorFlow.

Left to TensorFlow, a malformed address or a port in use ends in a gRPC traceback, and a
worker that was never started is waited for without a word and without end, inside a C++
call that holds the interpreter (no Python timer or thread can end it). So each worker first
listens on its own port (a port in use fails here, in one line) and waits until every other
worker's port answers, at most wait_s seconds (CAPSNET_CLUSTER_WAIT_S, default WAIT_S):
a port answers while its worker waits here, and again once TensorFlow's server holds it.
"""
import errno
import os
import re
import socket
import sys
import time

from safeio import UserError

WAIT_S = 300  # workers on several machines are started by hand, one after the other
# host:port; the host a name, an IPv4 address or a bracketed IPv6 address
ADDRESS = re.compile(r'^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?):(\d+)$')


def parse_address(text, name):
    """'host:port' -> (host, port); UserError naming the task (`name`, e.g. 'worker 1') when
    it is no host:port or the port is not 1..65535."""
    match = ADDRESS.match(str(text).strip())
    if not match:
        raise UserError('TF_CONFIG: %s has the address %r, expected host:port (e.g. '
                        '10.0.0.2:2222)' % (name, text))
    port = int(match.group(3))
    if not 1 <= port <= 65535:
        raise UserError('TF_CONFIG: %s has the port %d in %s, expected 1..65535'
                        % (name, port, text))
    return match.group(1).strip('[]'), port


def _listen(address, name):
    """A socket listening on the port of `address` (all interfaces, as TensorFlow's server
    binds it); UserError when another process holds the port."""
    port = parse_address(address, name)[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
    try:
        listener.bind(('', port))
        listener.listen(16)
    except OSError as e:
        listener.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError('TF_CONFIG: port %d of this task (%s, %s) is in use by another '
                            'process: stop it or give this task another port' % (port, name,
                                                                                 address))
        raise UserError('TF_CONFIG: cannot listen on port %d of this task (%s, %s): %s'
                        % (port, name, address, e.strerror or e))
    return listener


def _answers(address, name, timeout=1.0):
    host, port = parse_address(address, name)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:  # refused, unreachable, unknown host, timed out: not there yet
        return False


def wait_s():
    """CAPSNET_CLUSTER_WAIT_S as seconds (default WAIT_S); UserError when it is no positive
    number."""
    raw = os.environ.get('CAPSNET_CLUSTER_WAIT_S', '').strip()
    if not raw:
        return WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = float('nan')
    if not value > 0 or value == float('inf'):
        raise UserError('CAPSNET_CLUSTER_WAIT_S=%s: expected a number of seconds > 0' % raw)
    return value


def wait_for_workers(name, address, peers, limit_s=None, poll_s=0.5):
    """Returns once every task in peers ({'worker 1': 'host:port', ...}) answers on its port,
    this task (`name` at `address`) listening on its own meanwhile; UserError naming the
    tasks still silent after limit_s seconds (default wait_s()), or when this task's port is
    in use."""
    limit_s = wait_s() if limit_s is None else limit_s
    listener = _listen(address, name)
    try:
        deadline = time.time() + limit_s
        waiting = dict(peers)
        announced = False
        while True:
            waiting = {n: a for n, a in sorted(waiting.items()) if not _answers(a, n)}
            if not waiting:
                return
            silent = ', '.join('%s (%s)' % item for item in sorted(waiting.items()))
            if time.time() >= deadline:
                raise UserError('TF_CONFIG: no answer from %s within %g s: start every task '
                                'of the cluster, each with its own task index '
                                '(CAPSNET_CLUSTER_WAIT_S sets the wait)' % (silent, limit_s))
            if not announced:
                print('Waiting up to %g s for %s (CAPSNET_CLUSTER_WAIT_S sets the wait)'
                      % (limit_s, silent))
                sys.stdout.flush()
                announced = True
            time.sleep(poll_s)
    finally:
        listener.close()

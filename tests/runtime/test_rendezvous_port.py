"""A multi-process job's rendezvous port is the same on every task and lies below the kernel's
ephemeral ports, which other connections hold (a rank then failed to listen: EADDRINUSE)."""

from vlac.runtime.launch import RENDEZVOUS_PORTS, rendezvous_port


def test_the_port_is_a_function_of_the_job_and_below_the_ephemeral_ports():
    ports = [rendezvous_port(str(job)) for job in range(20000, 22000)]
    assert ports == [rendezvous_port(str(job)) for job in range(20000, 22000)]
    assert all(RENDEZVOUS_PORTS[0] <= p <= RENDEZVOUS_PORTS[1] < 32768 for p in ports)
    assert len(set(ports)) > 1500  # jobs spread over the range
    assert rendezvous_port("21230") == rendezvous_port(21230)

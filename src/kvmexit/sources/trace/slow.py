"""The slow-exit log of a trace (``report --slower-than``): the engine hands over every pair longer
than the threshold (:func:`kvmexit.model.is_slower`, the live rule), in trace order, with its split
as the engine charges it to the pair's row. A part is known where the trace has its event
(``sched_switch``: preempted and blocked; ``kvm_userspace_exit``: VMM; ``kvm_vcpu_wakeup``: halted):
from the start when ``kvmexit record``'s header lists it, else from its first line on (the log is
written as the trace is read), so an exit before it has that part unknown (``-``, null), never 0."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ...model import SlowExit, ThreadInfo
from ...names import vcpu_from_comm
from ...reasons import arm64
from .subdecode import GuestFault, SysReg

__all__ = ["SlowLog"]


class SlowLog:
    """``emit(arch, exit)`` gets each pair longer than ``threshold_ns`` as a :class:`SlowExit`."""

    def __init__(self, threshold_ns: int, emit: Callable[[str, SlowExit], None]) -> None:
        self.threshold_ns = threshold_ns
        self.emit = emit
        self.count = 0
        #: The names side file of the trace (the reader sets it): VM names, tgids, vCPUs.
        self.names: Optional[Any] = None

    def pair(
        self, engine: Any, start: list, duration_ns: int, sub: int, parts: Optional[Tuple[int, int, int]] = None
    ) -> None:
        """A slow pair of ``engine`` (a :class:`~.pairing.Pairer`): ``start`` is its start record,
        ``parts`` its split (preempted, blocked, VMM) where the engine computed one."""
        from .pairing import S_HALT, S_KEY, S_PAYLOAD, S_SUBS, S_TS

        tid, code, detail = start[S_KEY]
        decoder = engine.decoder
        payload = start[S_PAYLOAD] if len(start) > S_PAYLOAD else b""
        pc, qualification = decoder.pc_and_qualification(payload)
        names = self.names
        side = names.threads.get(tid) if names is not None else None
        tgid = engine.tgid.get(tid)
        if tgid is None and names is not None:
            tgid = names.tgid_of.get(tid)
        comm = engine.comm.get(tid) or (side.comm if side else "")
        vm = names.vm_of.get(tgid) if names is not None and tgid is not None else None
        vcpu = side.vcpu if side is not None and side.vcpu is not None else vcpu_from_comm(comm)
        esr_whole = False
        if decoder.arch == "arm64":
            esr: Optional[int] = (detail & 0x3F) << 26 if code == arm64.ARM_EXCEPTION_TRAP else 0
            # The whole ESR where an event inside the exit carried it (as the live programs read it).
            for record in start[S_SUBS] or ():
                if isinstance(record, (SysReg, GuestFault)):
                    esr, esr_whole = record.esr, True
                    break
        else:
            esr, esr_whole = qualification, qualification is not None
        preempt = blocked = vmm = None
        if parts is not None:
            if engine.traced("sched_switch"):
                preempt, blocked = parts[0], parts[1]
            if engine.traced("kvm_userspace_exit"):
                vmm = parts[2]
        self.count += 1
        self.emit(
            decoder.arch,
            SlowExit(
                time_ns=start[S_TS],
                tgid=tgid,
                tid=tid,
                code=code,
                detail=detail,
                duration_ns=duration_ns,
                halt_ns=start[S_HALT] if engine.traced("kvm_vcpu_wakeup") else None,
                pc=pc,
                esr=esr,
                esr_whole=esr_whole,
                sub=sub,
                thread=ThreadInfo(comm=comm, vm=vm or (side.vm if side else None), vcpu=vcpu),
                vmm_ns=vmm,
                preempt_ns=preempt,
                blocked_ns=blocked,
            ),
        )

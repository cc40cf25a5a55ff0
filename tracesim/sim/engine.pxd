# Compiled build of engine.py (setup.py). engine.py stays the source and runs as plain Python where the
# build is missing or stale (tracesim/sim/_compiled.py).
cimport cython

cimport tracesim.sim.tuplenew as tuplenew

from tracesim.sim.scheduler cimport SimReq


@cython.locals(frames=list, req=SimReq, discard_stale=bint)
cpdef list _frames(planned, outs, discard_stale)

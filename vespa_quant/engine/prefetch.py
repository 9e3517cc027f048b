"""A software prefetch for the scan kernels: LLVM's ``llvm.prefetch`` (PREFETCHT0) from numba.

Why by hand: numba exposes no prefetch, and the single-query scans need one. Measured here on 1M
documents, one query: the nibble-table scan of 48-byte codes took 5.35 ms streaming its blocks
from memory and 2.6-2.9 ms when each block pair was requested eight blocks ahead; the hardware
prefetcher alone leaves the loads waiting on L2. Batches need no help: every block stays in L1
for the queries after the first.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

CACHE_LINE = 64


@intrinsic
def prefetch(typingctx, array, at):
    """Ask for the cache line holding ``array.flat[at]`` (a read, into every cache level)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        pointer = builder.bitcast(builder.gep(data, [args[1]]), byte)
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen

import CKernels

/// Sets how many OpenMP threads the C kernels use, as `msq train --threads` does (0 = all cores).
///
/// For tools that run a model outside a ``Trainer`` (`msq eval`). Kernel reductions are
/// deterministic for a given thread count, so evaluating with the training run's count reproduces
/// its figures exactly. Negative counts are treated as 0; counts above the available cores are
/// capped at them (``RunLimits/cappedThreads(_:)``). Returns the count used.
@discardableResult
public func setKernelThreads(_ count: Int) -> Int {
    let used = RunLimits.cappedThreads(count)
    msq_set_num_threads(Int32(clamping: used))
    return used
}

/// The number of OpenMP threads the C kernels currently use.
public var kernelThreads: Int { Int(msq_get_num_threads()) }

import CKernels

/// Sets how many OpenMP threads the C kernels use, as `msq train --threads` does (0 = all cores).
///
/// For tools that run a model outside a ``Trainer`` (`msq eval`). Kernel reductions are
/// deterministic for a given thread count, so evaluating with the training run's count reproduces
/// its figures exactly. Negative counts are treated as 0; counts beyond `Int32.max` are clamped.
public func setKernelThreads(_ count: Int) {
    msq_set_num_threads(Int32(clamping: max(count, 0)))
}

/// The number of OpenMP threads the C kernels currently use.
public var kernelThreads: Int { Int(msq_get_num_threads()) }

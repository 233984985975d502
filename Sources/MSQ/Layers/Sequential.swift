/// Runs child modules in order: `y = fₖ(…f₂(f₁(x)))`; backward runs them in reverse.
///
/// Children are named `"0"`, `"1"`, … unless names are given; parameter paths are
/// `<child name>.<child's path>` (e.g. `layer1.0.conv1.weight` inside a model).
public final class Sequential: Module {
    /// The children with their names, in execution order.
    public private(set) var children: [(name: String, module: any Module)]

    /// Called as each child's backward returns, with that child: its parameter gradients are then
    /// final for the step, so a data-parallel trainer can start reducing them while the earlier
    /// children's backward still runs.
    public var onChildBackward: ((any Module) -> Void)?

    /// Children named by position: `"0"`, `"1"`, ….
    public init(_ modules: [any Module]) {
        children = modules.enumerated().map { (String($0.offset), $0.element) }
    }

    /// Children with explicit names (must be unique, non-empty, without dots).
    public init(named modules: [(String, any Module)]) {
        children = []
        for (name, module) in modules { append(module, name: name) }
    }

    /// Appends a child; `name` nil means its position (`"3"` for the fourth child).
    public func append(_ module: any Module, name: String? = nil) {
        let name = name ?? String(children.count)
        LayerKit.require(!name.isEmpty && !name.contains("."), "Sequential: invalid child name '\(name)'")
        LayerKit.require(!children.contains { $0.name == name }, "Sequential: duplicate child name '\(name)'")
        children.append((name, module))
    }

    /// The child named `name`, if any.
    public subscript(name: String) -> (any Module)? {
        children.first { $0.name == name }?.module
    }

    /// One step of the forward and backward passes: a child, or a batch norm and the ReLU or
    /// hard-swish right after it as one fused pass (the tensor read and written once instead of
    /// twice, bit for bit the two layers' result), as in MobileNetV3's conv → BN → activation triples.
    private enum Step {
        case child(Int)
        case batchNormActivation(BatchNorm2d, ActivationKind)
    }

    private var steps: [Step] {
        var out: [Step] = []
        var i = 0
        while i < children.count {
            if let bn = children[i].module as? BatchNorm2d, i + 1 < children.count,
               let act = children[i + 1].module as? Activation, BatchNorm2d.isFusable(act.kind) {
                out.append(.batchNormActivation(bn, act.kind))
                i += 2
            } else {
                out.append(.child(i))
                i += 1
            }
        }
        return out
    }

    /// Applies the children in order.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var x = input
        for step in steps {
            switch step {
            case let .child(i): x = children[i].module.forward(x, mode: mode)
            case let .batchNormActivation(bn, kind): x = bn.forwardActivation(x, mode: mode, kind: kind)
            }
        }
        return x
    }

    /// Applies the children's backward in reverse order.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        var g = gradOutput
        for step in steps.reversed() { g = backward(step, g) }
        return g
    }

    /// The children's backward in reverse order, the first child's without its input gradient.
    public func backwardParameters(_ gradOutput: Tensor) {
        let all = steps
        guard let first = all.first else { return }
        var g = gradOutput
        for step in all.dropFirst().reversed() { g = backward(step, g) }
        switch first {
        case let .child(i):
            children[i].module.backwardParameters(g)
            onChildBackward?(children[i].module)
        case let .batchNormActivation(bn, _):
            _ = bn.backwardActivation(g)
            onChildBackward?(bn)
        }
    }

    private func backward(_ step: Step, _ g: Tensor) -> Tensor {
        switch step {
        case let .child(i):
            let dx = children[i].module.backward(g)
            onChildBackward?(children[i].module)
            return dx
        case let .batchNormActivation(bn, _):
            let dx = bn.backwardActivation(g)
            onChildBackward?(bn)
            return dx
        }
    }

    /// Each child's parameters under `prefix.<child name>`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        for child in children { child.module.visitParameters(prefix: joinPath(prefix, child.name), body) }
    }

    /// Each child, then its descendants, depth first.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        for child in children {
            let path = joinPath(prefix, child.name)
            body(path, child.module)
            child.module.visitModules(prefix: path, body)
        }
    }
}

extension Sequential: CurvatureModule {
    /// The children's R-forwards in order.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        var x = (output: input, tangent: tangent)
        for child in children { x = curvatureChild(child.module).rForward(x.output, tangent: x.tangent) }
        return x
    }

    /// The children's R-backwards in reverse; the first child's input gradients only if asked for.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        var g: (gradient: Tensor?, tangent: Tensor?) = (gradient, tangent)
        for (i, child) in children.enumerated().reversed() {
            guard let rg = g.tangent else { break }
            g = curvatureChild(child.module).rBackward(g.gradient, tangent: rg, inputGradients: i > 0 || inputGradients)
        }
        return g
    }
}

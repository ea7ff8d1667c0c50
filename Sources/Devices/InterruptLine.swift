/// One interrupt input of the platform's interrupt controllers (an ISA IRQ
/// line). Devices drive it; the VM implements it with KVM_IRQ_LINE.
public protocol InterruptLine: Sendable {
    /// Drives the line high (asserted) or low. Level-triggered inputs
    /// (the ELCR says which) interrupt while high; edge-triggered ones on
    /// the rising edge.
    func set(high: Bool)
}

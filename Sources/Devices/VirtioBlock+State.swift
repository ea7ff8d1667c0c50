extension VirtioBlock {
    /// Requests the block service holds: it still writes READ buffers and
    /// vmmd still owes their status bytes and used-ring entries.
    public var requestsInFlight: Int { inFlight.count }
}

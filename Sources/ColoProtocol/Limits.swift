/// Limits of the local control protocol, shared by servers and clients.
public enum ControlProtocolLimits {
    /// The largest datagram a daemon accepts. Control messages are small;
    /// bulk data (guest RAM, device state, dirty bitmaps) travels as memfds,
    /// never inside a datagram.
    public static let maxDatagramBytes = 64 * 1024
}

fn main() {
    peermail_web_client::run();
}

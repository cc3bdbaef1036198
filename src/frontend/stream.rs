//! A client connection, plaintext or TLS, as one `AsyncRead + AsyncWrite` type.

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

pub type ClientStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

pub fn is_tls(s: &ClientStream) -> bool {
    matches!(s, Either::Right(_))
}

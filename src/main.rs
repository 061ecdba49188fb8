fn main() {
    println!("mqflux");
}

fn main() {
    println!("secureclaw");
}

fn main() -> Result<(), collm_operator::Error> {
    print!("{}", collm_operator::crd_yaml()?);
    Ok(())
}

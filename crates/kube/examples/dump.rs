fn main() {
    print!("{}", ikukantai_kube::crd::crds_yaml().unwrap());
}

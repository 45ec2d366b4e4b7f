use super::*;

fn vars(pairs: &[(&str, &str)]) -> Variables {
    Variables {
        given: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        environment: BTreeMap::from([("AMI".to_owned(), "ami-env".to_owned())]),
    }
}

#[test]
fn variables_are_filled_given_ones_first_and_every_unset_one_is_named_once() {
    let mut unset = Vec::new();
    assert_eq!(
        substitute(
            "${AMI}/${SG}-${SG}/${NOPE}/${X",
            &vars(&[("SG", "sg-1")]),
            &mut unset
        ),
        "ami-env/sg-1-sg-1//${X"
    );
    assert_eq!(unset, ["NOPE"]);
    let mut unset = Vec::new();
    assert_eq!(
        substitute("${AMI}", &vars(&[("AMI", "ami-given")]), &mut unset),
        "ami-given"
    );
    assert!(unset.is_empty());
}

#[test]
fn a_default_stands_in_for_an_unset_variable_only() {
    let mut unset = Vec::new();
    assert_eq!(
        substitute(
            "${IDLE:-5m}/${AMI:-ami-default}/${EMPTY:-}",
            &vars(&[]),
            &mut unset
        ),
        "5m/ami-env/"
    );
    assert!(unset.is_empty());
}

#[test]
fn user_data_must_stay_inside_its_directory() {
    assert!(user_data_path(Path::new("u"), "bootstrap.sh").is_ok());
    for bad in ["../x.sh", "/etc/passwd", "", "a/../../b"] {
        assert!(user_data_path(Path::new("u"), bad).is_err(), "{bad}");
    }
}
